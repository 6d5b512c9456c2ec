//! The tokio runtime the SDK owns, and running futures on it from whatever
//! executor the app awaits with (Swift concurrency, Kotlin coroutines,
//! asyncio).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::runtime::{Builder, Handle, Runtime};
use tokio::task::JoinHandle;

use crate::error::MobileError;

/// The SDK's runtime: two worker threads named `tandem-sdk`. Dropping it
/// stops every task without waiting (safe from any thread, also from one of
/// its own workers).
#[derive(Debug)]
pub(crate) struct SdkRuntime {
    runtime: Option<Runtime>,
    handle: Handle,
}

impl SdkRuntime {
    pub(crate) fn new() -> Result<Self, MobileError> {
        let runtime = Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("tandem-sdk")
            .enable_all()
            .build()
            .map_err(|e| MobileError::Internal(format!("starting the runtime: {e}")))?;
        let handle = runtime.handle().clone();
        Ok(Self { runtime: Some(runtime), handle })
    }

    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Run `fut` on the SDK's runtime and wait for it. If the caller stops
    /// waiting (the app cancels its task or coroutine), the work is aborted.
    pub(crate) async fn run<T, E, F>(&self, fut: F) -> Result<T, MobileError>
    where
        F: Future<Output = Result<T, E>> + Send + 'static,
        T: Send + 'static,
        E: Into<MobileError> + Send + 'static,
    {
        run_on(&self.handle, fut).await
    }
}

/// [`SdkRuntime::run`] with a bare handle (for objects that outlive a call).
pub(crate) async fn run_on<T, E, F>(handle: &Handle, fut: F) -> Result<T, MobileError>
where
    F: Future<Output = Result<T, E>> + Send + 'static,
    T: Send + 'static,
    E: Into<MobileError> + Send + 'static,
{
    match AbortOnDrop(handle.spawn(fut)).await {
        Ok(result) => result.map_err(Into::into),
        Err(e) if e.is_cancelled() => Err(MobileError::Closed),
        Err(e) => Err(MobileError::Internal(format!("SDK task failed: {e}"))),
    }
}

impl Drop for SdkRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A spawned task that is aborted when its handle is dropped.
#[derive(Debug)]
pub(crate) struct AbortOnDrop<T>(pub(crate) JoinHandle<T>);

impl<T> Future for AbortOnDrop<T> {
    type Output = Result<T, tokio::task::JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_runs_on_the_sdk_runtime_from_another_executor() {
        let rt = SdkRuntime::new().unwrap();
        // futures' own executor stands in for Swift / Kotlin / asyncio.
        let name =
            block_on(rt.run(async {
                Ok::<_, MobileError>(std::thread::current().name().map(str::to_owned))
            }))
            .unwrap();
        assert_eq!(name.as_deref(), Some("tandem-sdk"));
    }

    #[test]
    fn errors_convert_and_a_dropped_call_aborts_its_work() {
        let rt = SdkRuntime::new().unwrap();
        let e = block_on(rt.run(async { Err::<(), _>(tandem_phone::PhoneError::Timeout) }));
        assert_eq!(e, Err(MobileError::Timeout));

        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let call = rt.run(async move {
            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
            drop(tx);
            Ok::<_, MobileError>(())
        });
        // Start it, then give up on it.
        let mut call = Box::pin(call);
        let waker = std::task::Waker::noop();
        assert!(call.as_mut().poll(&mut Context::from_waker(waker)).is_pending());
        drop(call);
        // The sender is dropped with the aborted task, not an hour later.
        assert_eq!(
            rx.recv_timeout(std::time::Duration::from_secs(5)),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected)
        );
    }

    #[test]
    fn dropping_the_runtime_from_one_of_its_own_tasks_does_not_panic() {
        let rt = std::sync::Arc::new(std::sync::Mutex::new(Some(SdkRuntime::new().unwrap())));
        let handle = rt.lock().unwrap().as_ref().unwrap().handle().clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let rt2 = rt.clone();
        handle.spawn(async move {
            let taken = rt2.lock().unwrap().take();
            drop(taken);
            tx.send(()).unwrap();
        });
        rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
    }

    /// A minimal executor: poll on this thread, park until woken.
    fn block_on<F: Future>(fut: F) -> F::Output {
        struct Unpark(std::thread::Thread);
        impl std::task::Wake for Unpark {
            fn wake(self: std::sync::Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = std::sync::Arc::new(Unpark(std::thread::current())).into();
        let mut cx = Context::from_waker(&waker);
        let mut fut = std::pin::pin!(fut);
        loop {
            if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
                return v;
            }
            std::thread::park();
        }
    }
}
