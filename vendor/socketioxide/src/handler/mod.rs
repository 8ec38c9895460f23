//! Functions and types used to handle incoming connections and messages.
//! There is three main types of handlers: [connect], [message] and [disconnect].
pub mod connect;
pub mod disconnect;
pub mod message;

pub(crate) use connect::BoxedConnectHandler;
pub use connect::{ConnectHandler, ConnectMiddleware, FromConnectParts};
pub(crate) use disconnect::BoxedDisconnectHandler;
pub use disconnect::{DisconnectHandler, FromDisconnectParts};
pub(crate) use message::BoxedMessageHandler;
pub use message::{FromMessage, FromMessageParts, MessageHandler};
pub use socketioxide_core::Value;

/// dispatchd patch: starts an event handler on the task that read its event, and spawns it
/// only when it has to wait.
///
/// Upstream spawned every handler as a task of its own: for an event whose handler never
/// waits (a pilot's position: checked, indexed, relayed, acked, all in memory) that was a task
/// to allocate and schedule, and often a wake-up of another worker thread. Now the handler
/// is polled once, here; a handler that returns `Pending` (a database query, say) is spawned
/// as before, and the spawned task polls it again with its own waker, as the `Future`
/// contract allows (only the latest poll's waker is to be woken). A handler that panics on
/// this first poll is dropped, as the spawned task would have been: the reader goes on.
pub(crate) fn run_or_spawn<F>(fut: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let mut fut = Box::pin(fut);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let first =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fut.as_mut().poll(&mut cx)));
    match first {
        Ok(std::task::Poll::Ready(())) => {}
        Ok(std::task::Poll::Pending) => {
            tokio::spawn(fut);
        }
        Err(_) => {
            #[cfg(feature = "tracing")]
            tracing::error!("event handler panicked");
        }
    }
}

/// A struct used to erase the type of [`ConnectHandler`] or [`MessageHandler`] so it can be stored in a map
pub(crate) struct MakeErasedHandler<H, A, T> {
    handler: H,
    adapter: std::marker::PhantomData<A>,
    type_: std::marker::PhantomData<T>,
}
impl<H, A, T> MakeErasedHandler<H, A, T> {
    pub fn new(handler: H) -> Self {
        Self {
            handler,
            adapter: std::marker::PhantomData,
            type_: std::marker::PhantomData,
        }
    }
}
impl<H: Clone, A, T> Clone for MakeErasedHandler<H, A, T> {
    fn clone(&self) -> Self {
        Self {
            handler: self.handler.clone(),
            adapter: std::marker::PhantomData,
            type_: std::marker::PhantomData,
        }
    }
}
