//! Cadence: the next `nextRunAt` of a mission (contract section 4).
//!
//! Pure: no clock, no I/O. The caller passes the instant to compute from and the
//! default time zone (`MANA_AI_DEFAULT_TIMEZONE`), which a cadence's own IANA
//! `timezone` field overrides. Wall-clock cadences (daily, weekly, cron) are
//! evaluated in that zone and returned in UTC.
//!
//! DST rules (the same for every wall-clock cadence):
//! - a local time that does not exist (spring-forward gap, e.g. 02:30 in
//!   Europe/Berlin on the last Sunday of March) runs at the first instant after
//!   the gap (03:00 local), so a daily mission still runs that day;
//! - a local time that exists twice (fall-back, 02:30 on the last Sunday of
//!   October) runs once, at the earlier instant (02:30 summer time).
//!
//! Cron patterns are matched by `croner` against local wall-clock time. It
//! applies the gap rule above to fixed-time patterns (one minute, one hour);
//! patterns spanning several hours (`*/15 * * * *`, `0 2,14 * * *`) simply
//! skip wall-clock times that do not exist. Each wall-clock time runs once
//! (at its earlier instant), also for stepped patterns.
//!
//! Missed slots: a mission whose `nextRunAt` lies far in the past runs once,
//! not once per missed slot, because the runner computes the next slot from the
//! run's own time ([`Cadence::next_after_run`]), and `next_after(t) > t` for
//! every kind.
//!
//! Interval floor (`MANA_AI_MIN_INTERVAL_MINUTES`, default
//! [`DEFAULT_MIN_INTERVAL`]): [`Cadence::next_after_floored`] and
//! [`Cadence::next_after_run_floored`] run an interval shorter than the floor
//! at the floor and say so ([`Floored::floored`]), so the caller can count it.
//! Every other kind, and every interval at or above the floor, is unchanged.

use std::fmt;
use std::str::FromStr;

use chrono::{
    DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, TimeZone, Timelike, Utc,
};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use serde_json::Value;

/// Longest accepted interval: ten years. Keeps `from + every` far from overflow.
const MAX_EVERY_MINUTES: f64 = 10.0 * 366.0 * 24.0 * 60.0;

/// The interval floor when `MANA_AI_MIN_INTERVAL_MINUTES` is not set: one minute.
pub const DEFAULT_MIN_INTERVAL: Duration = Duration::minutes(1);

/// A next run computed under the interval floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Floored {
    pub at: DateTime<Utc>,
    /// The cadence is an interval shorter than the floor: `at` is `from + floor`.
    pub floored: bool,
}

/// When a mission runs next. Parsed from the mission's `cadence` JSON value.
#[derive(Debug, Clone, PartialEq)]
pub enum Cadence {
    /// Only when the user starts it; never scheduled.
    Manual,
    /// `from + every`, independent of any time zone.
    Interval { every: Duration },
    /// Every day at `hour:minute` local time.
    Daily {
        hour: u32,
        minute: u32,
        tz: Option<Tz>,
    },
    /// Every week on `weekday` at `hour:00` local time.
    Weekly {
        weekday: chrono::Weekday,
        hour: u32,
        tz: Option<Tz>,
    },
    /// A standard 5-field cron expression in local time. Boxed: the parsed
    /// pattern is several hundred bytes and most missions are not cron.
    Cron { schedule: Box<Cron>, tz: Option<Tz> },
}

/// Why a `cadence` value was refused. The message names the field and problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CadenceError {
    #[error("cadence must be an object with a string `kind`")]
    NotAnObject,
    #[error("unknown cadence kind `{0}`")]
    UnknownKind(String),
    #[error("`everyMinutes` must be a positive number of minutes (at most ten years)")]
    BadInterval,
    #[error("`{field}` must be an integer from 0 to {max}")]
    OutOfRange { field: &'static str, max: u32 },
    #[error("`timezone` is not an IANA time zone: {0}")]
    BadTimezone(String),
    #[error("`expression` is not a standard 5-field cron expression: {0}")]
    BadCron(String),
}

impl Cadence {
    /// Parses a mission's `cadence` value, e.g. `{"kind":"daily","atHour":9,"atMinute":0}`.
    ///
    /// `atMinute` defaults to 0 when absent. Integer fields accept JSON numbers with
    /// an integral value and digit strings (form fields sometimes arrive as strings).
    pub fn parse(value: &Value) -> Result<Cadence, CadenceError> {
        let obj = value.as_object().ok_or(CadenceError::NotAnObject)?;
        let kind = obj
            .get("kind")
            .and_then(Value::as_str)
            .ok_or(CadenceError::NotAnObject)?;
        let tz = match obj.get("timezone") {
            None | Some(Value::Null) => None,
            Some(Value::String(name)) => {
                Some(Tz::from_str(name).map_err(|_| CadenceError::BadTimezone(name.clone()))?)
            }
            Some(other) => return Err(CadenceError::BadTimezone(other.to_string())),
        };
        match kind {
            "manual" => Ok(Cadence::Manual),
            "interval" => {
                let minutes = obj
                    .get("everyMinutes")
                    .and_then(number)
                    .ok_or(CadenceError::BadInterval)?;
                if !(minutes > 0.0 && minutes <= MAX_EVERY_MINUTES) {
                    return Err(CadenceError::BadInterval);
                }
                // Milliseconds, as the webapp computes `from + everyMinutes * 60000`.
                let every = Duration::milliseconds((minutes * 60_000.0).round() as i64);
                if every <= Duration::zero() {
                    return Err(CadenceError::BadInterval);
                }
                Ok(Cadence::Interval { every })
            }
            "daily" => Ok(Cadence::Daily {
                hour: int_field(obj, "atHour", 23, None)?,
                minute: int_field(obj, "atMinute", 59, Some(0))?,
                tz,
            }),
            "weekly" => {
                let day = int_field(obj, "dayOfWeek", 6, None)?;
                Ok(Cadence::Weekly {
                    weekday: weekday_from_sunday0(day),
                    hour: int_field(obj, "atHour", 23, None)?,
                    tz,
                })
            }
            "cron" => {
                let expression = obj
                    .get("expression")
                    .and_then(Value::as_str)
                    .ok_or_else(|| CadenceError::BadCron("missing `expression`".into()))?;
                Ok(Cadence::Cron {
                    schedule: Box::new(parse_cron(expression)?),
                    tz,
                })
            }
            other => Err(CadenceError::UnknownKind(other.to_string())),
        }
    }

    /// The next run strictly after `from`, or `None` for manual missions.
    ///
    /// `default_tz` applies when the cadence has no `timezone` of its own.
    pub fn next_after(&self, from: DateTime<Utc>, default_tz: Tz) -> Option<DateTime<Utc>> {
        match self {
            Cadence::Manual => None,
            Cadence::Interval { every } => from.checked_add_signed(*every),
            Cadence::Daily { hour, minute, tz } => {
                let tz = tz.unwrap_or(default_tz);
                next_wall_clock(from, tz, |_| true, *hour, *minute)
            }
            Cadence::Weekly { weekday, hour, tz } => {
                let tz = tz.unwrap_or(default_tz);
                next_wall_clock(from, tz, |d| d.weekday() == *weekday, *hour, 0)
            }
            Cadence::Cron { schedule, tz } => next_cron(schedule, from, tz.unwrap_or(default_tz)),
        }
    }

    /// The `nextRunAt` to write back after the run of `slot` that happened at `ran_at`.
    ///
    /// Computed from the later of the two: from `ran_at` so a mission whose slot
    /// lies days in the past runs once and then continues from now (no burst of
    /// catch-up runs), and never before `slot` so a host clock behind the
    /// database's can never hand back the same slot twice.
    pub fn next_after_run(
        &self,
        slot: DateTime<Utc>,
        ran_at: DateTime<Utc>,
        default_tz: Tz,
    ) -> Option<DateTime<Utc>> {
        self.next_after(slot.max(ran_at), default_tz)
    }

    /// [`Cadence::next_after`] with an interval shorter than `floor` run at
    /// `floor` (flagged). A floor of zero or less changes nothing.
    pub fn next_after_floored(
        &self,
        from: DateTime<Utc>,
        default_tz: Tz,
        floor: Duration,
    ) -> Option<Floored> {
        match self {
            Cadence::Interval { every } if *every < floor => Some(Floored {
                at: from.checked_add_signed(floor)?,
                floored: true,
            }),
            _ => Some(Floored {
                at: self.next_after(from, default_tz)?,
                floored: false,
            }),
        }
    }

    /// [`Cadence::next_after_run`] under the interval floor, as
    /// [`Cadence::next_after_floored`].
    pub fn next_after_run_floored(
        &self,
        slot: DateTime<Utc>,
        ran_at: DateTime<Utc>,
        default_tz: Tz,
        floor: Duration,
    ) -> Option<Floored> {
        self.next_after_floored(slot.max(ran_at), default_tz, floor)
    }
}

impl fmt::Display for Cadence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cadence::Manual => write!(f, "manual"),
            Cadence::Interval { every } => write!(f, "every {} s", every.num_seconds()),
            Cadence::Daily { hour, minute, .. } => write!(f, "daily {hour:02}:{minute:02}"),
            Cadence::Weekly { weekday, hour, .. } => write!(f, "weekly {weekday} {hour:02}:00"),
            Cadence::Cron { schedule, .. } => write!(f, "cron {}", schedule.pattern.as_str()),
        }
    }
}

/// Parses a standard 5-field expression; seconds and year fields are refused.
fn parse_cron(expression: &str) -> Result<Cron, CadenceError> {
    if expression.split_whitespace().count() != 5 {
        return Err(CadenceError::BadCron(format!(
            "expected 5 fields in `{expression}`"
        )));
    }
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
        .parse(expression)
        .map_err(|e| CadenceError::BadCron(e.to_string()))
}

/// A JSON number, or a string holding one.
fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .filter(|n| n.is_finite())
}

fn int_field(
    obj: &serde_json::Map<String, Value>,
    field: &'static str,
    max: u32,
    default: Option<u32>,
) -> Result<u32, CadenceError> {
    let out_of_range = CadenceError::OutOfRange { field, max };
    match obj.get(field) {
        None | Some(Value::Null) => default.ok_or(out_of_range),
        Some(v) => match number(v) {
            Some(n) if n.fract() == 0.0 && (0.0..=f64::from(max)).contains(&n) => Ok(n as u32),
            _ => Err(out_of_range),
        },
    }
}

fn weekday_from_sunday0(day: u32) -> chrono::Weekday {
    // chrono counts from Monday; the webapp (JavaScript getDay) from Sunday.
    chrono::Weekday::try_from(((day + 6) % 7) as u8).unwrap_or(chrono::Weekday::Sun)
}

/// First day on or after `from`'s local date that `day_matches`, at `hour:minute`
/// local, that lies strictly after `from`.
fn next_wall_clock(
    from: DateTime<Utc>,
    tz: Tz,
    day_matches: impl Fn(NaiveDate) -> bool,
    hour: u32,
    minute: u32,
) -> Option<DateTime<Utc>> {
    let mut day = from.with_timezone(&tz).date_naive();
    // Today may already be past; 8 days always contain a matching weekday, and a
    // few extra cover zones that skipped a whole date (Pacific/Apia, 2011-12-30).
    for _ in 0..10 {
        if day_matches(day) {
            let local = day.and_hms_opt(hour, minute, 0)?;
            let instant = resolve_local(tz, local)?;
            if instant > from {
                return Some(instant);
            }
        }
        day = day.succ_opt()?;
    }
    None
}

/// Maps a local wall-clock time to an instant by the module's DST rules.
pub fn resolve_local(tz: Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    match tz.from_local_datetime(&local) {
        LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
        LocalResult::Ambiguous(earlier, _) => Some(earlier.with_timezone(&Utc)),
        LocalResult::None => {
            // In a gap: walk forward to the first wall-clock minute that exists,
            // which is the transition instant itself (gaps start and end on whole
            // minutes in every modern zone). Bounded by the longest gap on record (a day).
            let mut t = local;
            for _ in 0..(26 * 60) {
                t += Duration::minutes(1);
                if let Some(found) = tz.from_local_datetime(&t).earliest() {
                    return Some(found.with_timezone(&Utc));
                }
            }
            None
        }
    }
}

fn next_cron(schedule: &Cron, from: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
    // croner keeps sub-second parts; start on a whole second (<= from) instead.
    let local = from.with_timezone(&tz);
    let mut cursor = local.with_nanosecond(0).unwrap_or(local);
    // croner maps an ambiguous wall-clock time to its earlier instant, which can
    // lie before `from` when `from` is in the repeated hour: step past those.
    // Every-minute patterns need at most 60 steps to leave the repeated hour.
    for _ in 0..200 {
        let next = schedule.find_next_occurrence(&cursor, false).ok()?;
        if next.with_timezone(&Utc) > from {
            return Some(next.with_timezone(&Utc));
        }
        cursor = next;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono_tz::Europe::Berlin;
    use serde_json::json;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn cad(v: Value) -> Cadence {
        Cadence::parse(&v).unwrap()
    }

    fn next(c: &Cadence, from: &str) -> DateTime<Utc> {
        c.next_after(utc(from), Berlin).unwrap()
    }

    #[test]
    fn parses_every_kind() {
        assert_eq!(cad(json!({"kind": "manual"})), Cadence::Manual);
        assert_eq!(
            cad(json!({"kind": "interval", "everyMinutes": 30})),
            Cadence::Interval {
                every: Duration::minutes(30)
            }
        );
        assert_eq!(
            cad(json!({"kind": "daily", "atHour": 9, "atMinute": "5", "timezone": "UTC"})),
            Cadence::Daily {
                hour: 9,
                minute: 5,
                tz: Some(Tz::UTC)
            }
        );
        assert_eq!(
            cad(json!({"kind": "daily", "atHour": 9.0})),
            Cadence::Daily {
                hour: 9,
                minute: 0,
                tz: None
            }
        );
        assert_eq!(
            cad(json!({"kind": "weekly", "dayOfWeek": 0, "atHour": 8})),
            Cadence::Weekly {
                weekday: chrono::Weekday::Sun,
                hour: 8,
                tz: None
            }
        );
        assert!(matches!(
            cad(json!({"kind": "cron", "expression": "*/15 * * * *"})),
            Cadence::Cron { .. }
        ));
    }

    #[test]
    fn parse_errors_name_the_problem() {
        let err = |v: Value| Cadence::parse(&v).unwrap_err();
        assert_eq!(err(json!("daily")), CadenceError::NotAnObject);
        assert_eq!(
            err(json!({"kind": "hourly"})),
            CadenceError::UnknownKind("hourly".into())
        );
        for bad in [json!(0), json!(-5), json!("abc"), json!(null), json!(1e12)] {
            assert_eq!(
                err(json!({"kind": "interval", "everyMinutes": bad})),
                CadenceError::BadInterval
            );
        }
        let hour = CadenceError::OutOfRange {
            field: "atHour",
            max: 23,
        };
        assert_eq!(err(json!({"kind": "daily", "atHour": 24})), hour);
        assert_eq!(err(json!({"kind": "daily", "atHour": 9.5})), hour);
        assert_eq!(err(json!({"kind": "daily"})), hour);
        assert_eq!(
            err(json!({"kind": "daily", "atHour": 9, "atMinute": 60})),
            CadenceError::OutOfRange {
                field: "atMinute",
                max: 59
            }
        );
        assert_eq!(
            err(json!({"kind": "weekly", "dayOfWeek": 7, "atHour": 9})),
            CadenceError::OutOfRange {
                field: "dayOfWeek",
                max: 6
            }
        );
        assert_eq!(
            err(json!({"kind": "daily", "atHour": 9, "timezone": "Mars/Olympus"})),
            CadenceError::BadTimezone("Mars/Olympus".into())
        );
        for bad in [
            "* * * *",
            "0 * * * * *",
            "61 * * * *",
            "hello world a b c",
            "",
        ] {
            let e = err(json!({"kind": "cron", "expression": bad}));
            assert!(matches!(e, CadenceError::BadCron(_)), "{bad}: {e}");
        }
        assert!(err(json!({"kind": "cron"}))
            .to_string()
            .contains("expression"));
    }

    #[test]
    fn interval_adds_minutes_and_manual_never_runs() {
        let c = cad(json!({"kind": "interval", "everyMinutes": 90}));
        assert_eq!(
            next(&c, "2025-01-01T10:00:00Z"),
            utc("2025-01-01T11:30:00Z")
        );
        assert_eq!(
            Cadence::Manual.next_after(utc("2025-01-01T10:00:00Z"), Berlin),
            None
        );
    }

    #[test]
    fn daily_is_strictly_after_from() {
        let c = cad(json!({"kind": "daily", "atHour": 9, "atMinute": 30}));
        // January: Berlin is UTC+1, so 09:30 local is 08:30Z.
        assert_eq!(
            next(&c, "2025-01-10T08:00:00Z"),
            utc("2025-01-10T08:30:00Z")
        );
        assert_eq!(
            next(&c, "2025-01-10T08:30:00Z"),
            utc("2025-01-11T08:30:00Z")
        );
        assert_eq!(
            next(&c, "2025-01-10T08:29:59.999Z"),
            utc("2025-01-10T08:30:00Z")
        );
        let ny = cad(
            json!({"kind": "daily", "atHour": 9, "atMinute": 0, "timezone": "America/New_York"}),
        );
        assert_eq!(
            next(&ny, "2025-01-10T12:00:00Z"),
            utc("2025-01-10T14:00:00Z")
        );
    }

    #[test]
    fn daily_nine_berlin_stays_nine_local_across_both_transitions() {
        let c = cad(json!({"kind": "daily", "atHour": 9, "atMinute": 0}));
        // 2025-03-30 spring forward (UTC+1 -> +2), 2025-10-26 fall back (+2 -> +1).
        for (from, runs) in [
            (
                "2025-03-28T12:00:00Z",
                [
                    "2025-03-29T08:00:00Z",
                    "2025-03-30T07:00:00Z",
                    "2025-03-31T07:00:00Z",
                ],
            ),
            (
                "2025-10-24T12:00:00Z",
                [
                    "2025-10-25T07:00:00Z",
                    "2025-10-26T08:00:00Z",
                    "2025-10-27T08:00:00Z",
                ],
            ),
        ] {
            let mut t = utc(from);
            for expected in runs {
                t = c.next_after(t, Berlin).unwrap();
                assert_eq!(t, utc(expected));
                assert_eq!(t.with_timezone(&Berlin).hour(), 9);
            }
        }
    }

    #[test]
    fn gap_time_runs_at_first_instant_after_the_gap() {
        // 02:30 does not exist in Berlin on 2025-03-30: run at 03:00 CEST (01:00Z).
        let c = cad(json!({"kind": "daily", "atHour": 2, "atMinute": 30}));
        assert_eq!(
            next(&c, "2025-03-29T12:00:00Z"),
            utc("2025-03-30T01:00:00Z")
        );
        assert_eq!(
            next(&c, "2025-03-30T01:00:00Z"),
            utc("2025-03-31T00:30:00Z")
        );
        let cron = cad(json!({"kind": "cron", "expression": "30 2 * * *"}));
        assert_eq!(
            next(&cron, "2025-03-29T12:00:00Z"),
            utc("2025-03-30T01:00:00Z")
        );
    }

    #[test]
    fn ambiguous_time_runs_once_at_the_earlier_instant() {
        // 02:30 happens twice in Berlin on 2025-10-26: 00:30Z (CEST) and 01:30Z (CET).
        let daily = cad(json!({"kind": "daily", "atHour": 2, "atMinute": 30}));
        let cron = cad(json!({"kind": "cron", "expression": "30 2 * * *"}));
        for c in [&daily, &cron] {
            assert_eq!(next(c, "2025-10-25T12:00:00Z"), utc("2025-10-26T00:30:00Z"));
            // After the first 02:30 the repeated one is skipped: next day.
            assert_eq!(next(c, "2025-10-26T00:30:00Z"), utc("2025-10-27T01:30:00Z"));
            // From inside the repeated hour, too.
            assert_eq!(next(c, "2025-10-26T01:10:00Z"), utc("2025-10-27T01:30:00Z"));
        }
    }

    #[test]
    fn weekly_counts_days_from_sunday() {
        // dayOfWeek 1 = Monday. 2025-01-15 is a Wednesday.
        let c = cad(json!({"kind": "weekly", "dayOfWeek": 1, "atHour": 8}));
        assert_eq!(
            next(&c, "2025-01-15T12:00:00Z"),
            utc("2025-01-20T07:00:00Z")
        );
        assert_eq!(
            next(&c, "2025-01-20T06:59:00Z"),
            utc("2025-01-20T07:00:00Z")
        );
        assert_eq!(
            next(&c, "2025-01-20T07:00:00Z"),
            utc("2025-01-27T07:00:00Z")
        );
        let sunday = cad(json!({"kind": "weekly", "dayOfWeek": 0, "atHour": 10}));
        assert_eq!(
            next(&sunday, "2025-03-29T12:00:00Z"),
            utc("2025-03-30T08:00:00Z")
        );
    }

    #[test]
    fn cron_every_quarter_hour() {
        let c = cad(json!({"kind": "cron", "expression": "*/15 * * * *"}));
        assert_eq!(
            next(&c, "2025-01-10T10:07:12.5Z"),
            utc("2025-01-10T10:15:00Z")
        );
        assert_eq!(
            next(&c, "2025-01-10T10:15:00Z"),
            utc("2025-01-10T10:30:00Z")
        );
        // Spring forward: 01:45 CET is followed by 03:00 CEST.
        assert_eq!(
            next(&c, "2025-03-30T00:45:00Z"),
            utc("2025-03-30T01:00:00Z")
        );
        // Fall back: each wall-clock quarter runs once, the repeated hour is skipped.
        assert_eq!(
            next(&c, "2025-10-26T00:30:00Z"),
            utc("2025-10-26T00:45:00Z")
        );
        assert_eq!(
            next(&c, "2025-10-26T00:45:00Z"),
            utc("2025-10-26T02:00:00Z")
        );
        assert_eq!(
            next(&c, "2025-10-26T01:20:00Z"),
            utc("2025-10-26T02:00:00Z")
        );
    }

    #[test]
    fn cron_weekdays_at_nine_across_dst() {
        let c = cad(json!({"kind": "cron", "expression": "0 9 * * 1-5"}));
        // Fri 2025-03-28 after 09:00 -> Mon 2025-03-31 09:00 CEST.
        assert_eq!(
            next(&c, "2025-03-28T09:00:00Z"),
            utc("2025-03-31T07:00:00Z")
        );
        // Fri 2025-10-24 -> Mon 2025-10-27 09:00 CET.
        assert_eq!(
            next(&c, "2025-10-24T09:00:00Z"),
            utc("2025-10-27T08:00:00Z")
        );
        let utc_zone = cad(json!({"kind": "cron", "expression": "0 9 * * 1-5", "timezone": "UTC"}));
        assert_eq!(
            next(&utc_zone, "2025-10-24T09:00:00Z"),
            utc("2025-10-27T09:00:00Z")
        );
    }

    fn every_kind() -> Vec<Cadence> {
        [
            json!({"kind": "interval", "everyMinutes": 1}),
            json!({"kind": "daily", "atHour": 2, "atMinute": 30}),
            json!({"kind": "daily", "atHour": 23, "atMinute": 59, "timezone": "Pacific/Apia"}),
            json!({"kind": "weekly", "dayOfWeek": 0, "atHour": 2}),
            json!({"kind": "cron", "expression": "*/15 * * * *"}),
            json!({"kind": "cron", "expression": "30 2 * * 0"}),
            json!({"kind": "cron", "expression": "0 0 29 2 *"}),
        ]
        .into_iter()
        .map(cad)
        .collect()
    }

    #[test]
    fn a_long_missed_mission_runs_once_then_continues_from_now() {
        let now = utc("2025-10-26T01:10:00Z");
        let slot = now - Duration::days(40);
        for c in every_kind() {
            let next = c.next_after_run(slot, now, Berlin).unwrap();
            assert!(
                next > now,
                "{c}: {next} must be after the run, not a missed slot"
            );
            // A host clock behind the slot still never repeats the slot.
            let skewed = c
                .next_after_run(now, now - Duration::seconds(5), Berlin)
                .unwrap();
            assert!(skewed > now, "{c}");
        }
    }

    #[test]
    fn an_interval_below_the_floor_runs_at_the_floor_and_says_so() {
        let tiny = cad(json!({"kind": "interval", "everyMinutes": 0.001}));
        let from = utc("2025-01-01T10:00:00Z");
        let next = tiny
            .next_after_floored(from, Berlin, DEFAULT_MIN_INTERVAL)
            .unwrap();
        assert_eq!(next.at, utc("2025-01-01T10:01:00Z"));
        assert!(next.floored);
        // After a run, from the later of slot and run time, as without the floor.
        let ran = utc("2025-01-01T10:00:30Z");
        let after_run = tiny
            .next_after_run_floored(from, ran, Berlin, DEFAULT_MIN_INTERVAL)
            .unwrap();
        assert_eq!(after_run.at, utc("2025-01-01T10:01:30Z"));
        assert!(after_run.floored);
        // A larger floor passed in applies the same way.
        let five = tiny
            .next_after_floored(from, Berlin, Duration::minutes(5))
            .unwrap();
        assert_eq!((five.at, five.floored), (utc("2025-01-01T10:05:00Z"), true));
    }

    #[test]
    fn the_floor_leaves_everything_at_or_above_it_alone() {
        let from = utc("2025-10-26T00:45:00Z");
        let mut kinds = every_kind();
        kinds.push(cad(json!({"kind": "interval", "everyMinutes": 1.5})));
        for c in kinds {
            let floored = c
                .next_after_floored(from, Berlin, DEFAULT_MIN_INTERVAL)
                .unwrap();
            assert_eq!(floored.at, c.next_after(from, Berlin).unwrap(), "{c}");
            assert!(!floored.floored, "{c}");
            let run = c
                .next_after_run_floored(from, from, Berlin, DEFAULT_MIN_INTERVAL)
                .unwrap();
            assert_eq!(Some(run.at), c.next_after_run(from, from, Berlin), "{c}");
        }
        let tiny = cad(json!({"kind": "interval", "everyMinutes": 0.001}));
        let unfloored = tiny
            .next_after_floored(from, Berlin, Duration::zero())
            .unwrap();
        assert_eq!(unfloored.at, from + Duration::milliseconds(60));
        assert!(!unfloored.floored);
        assert_eq!(
            Cadence::Manual.next_after_floored(from, Berlin, DEFAULT_MIN_INTERVAL),
            None
        );
    }

    proptest::proptest! {
        #[test]
        fn next_is_always_strictly_later(secs in 1_577_836_800i64..1_893_456_000, nanos in 0u32..1_000_000_000) {
            let from = DateTime::from_timestamp(secs, nanos).unwrap();
            for c in every_kind() {
                let next = c.next_after(from, Berlin).unwrap();
                proptest::prop_assert!(next > from, "{} from {}: {}", c, from, next);
            }
            let daily = cad(json!({"kind": "daily", "atHour": 9, "atMinute": 15}));
            let next = daily.next_after(from, Berlin).unwrap();
            let local = next.with_timezone(&Berlin);
            proptest::prop_assert_eq!((local.hour(), local.minute()), (9, 15));
            proptest::prop_assert!(next - from <= Duration::hours(25));
        }
    }
}
