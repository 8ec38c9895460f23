// Included at the root of each backend module (postgres.rs, sqlite.rs), which defines `Db`,
// `StoreImpl` (with a `pool`, and a `writer` pool that write transactions begin on),
// `BACKEND` and `BEGIN_WRITE`. The other files under sql/ are each included into a submodule
// of the backend and implement one store trait.

use async_trait::async_trait;

/// An open write transaction on this backend.
pub struct TxImpl {
    tx: sqlx::Transaction<'static, Db>,
}

#[async_trait]
impl crate::store::Store for StoreImpl {
    fn backend(&self) -> crate::store::Backend {
        BACKEND
    }

    async fn ping(&self) -> crate::error::Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn close(&self) {
        // The same pool twice on Postgres: closing it again returns at once.
        self.writer.close().await;
        self.pool.close().await;
    }

    async fn begin(&self) -> crate::error::Result<Box<dyn crate::store::StoreTx>> {
        let tx = self.writer.begin_with(BEGIN_WRITE).await?;
        Ok(Box::new(TxImpl { tx }))
    }
}
