//! Fair queue of due runs across users (issue 9; filled in by the load work).
