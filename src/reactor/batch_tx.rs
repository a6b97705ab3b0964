//! The applier batch's transaction, begun and ended by hand so that BEGIN
//! and COMMIT are pipelined with the batch's statements.

use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;

/// A batch's transaction on a pooled connection, begun and ended by hand
/// (tokio-postgres' `Transaction` awaits BEGIN alone and takes COMMIT by
/// value) so that BEGIN is pipelined with the claim and COMMIT with the
/// writes. Requests go out in the order their futures are first polled
/// (tokio-postgres, "Pipelining"), which `futures_util::join!` does in
/// argument order.
///
/// Dropped while open (an error, a cancelled batch), it queues a ROLLBACK
/// on the connection without waiting, as `Transaction`'s own drop does: the
/// ROLLBACK runs before anything the connection's next user sends.
pub(super) struct BatchTx<'a> {
    pub(super) client: &'a tokio_postgres::Client,
    /// BEGIN may have been sent and COMMIT has not.
    open: AtomicBool,
}

impl<'a> BatchTx<'a> {
    pub(super) fn new(client: &'a tokio_postgres::Client) -> Self {
        BatchTx {
            client,
            open: AtomicBool::new(false),
        }
    }

    /// Sends BEGIN; statements polled after this one run inside the
    /// transaction.
    ///
    /// The batch commits without waiting for its WAL flush: snapshots are
    /// derived state, and the queue rows go in the same transaction, so a
    /// batch lost in a database crash is applied again from the queue.
    /// Nothing durable can build on a lost batch either: a run's write-back
    /// commits synchronously, which flushes the WAL up to it, earlier
    /// batches included.
    pub(super) fn begin(
        &self,
    ) -> impl std::future::Future<Output = Result<(), tokio_postgres::Error>> + 'a {
        self.open.store(true, Relaxed);
        self.client
            .batch_execute("BEGIN; SET LOCAL synchronous_commit = off")
    }

    /// Sends COMMIT; once it is sent the transaction is over whatever the
    /// answer (a COMMIT that fails, or one after a failed statement, rolls
    /// back), so a drop after that sends no ROLLBACK.
    pub(super) async fn commit(&self) -> Result<(), tokio_postgres::Error> {
        let mut commit = std::pin::pin!(self.client.batch_execute("COMMIT"));
        let first = futures_util::poll!(commit.as_mut());
        self.open.store(false, Relaxed);
        match first {
            std::task::Poll::Ready(result) => result,
            std::task::Poll::Pending => commit.await,
        }
    }
}

impl Drop for BatchTx<'_> {
    fn drop(&mut self) {
        if self.open.load(Relaxed) {
            // The first poll sends the request; its answer is not awaited.
            let _ = futures_util::FutureExt::now_or_never(self.client.batch_execute("ROLLBACK"));
        }
    }
}
