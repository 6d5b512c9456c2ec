//! The wrappers from Rust, awaited from a bare executor as Swift, Kotlin or
//! asyncio would (no tokio runtime on the calling thread): opening with an
//! app-supplied secret store, the identity kept across a reopen, errors that
//! need no relay, and subscription handles. Everything that needs a relay
//! and a desktop runs from Python (`tests/test_sdk.py`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use tandem_mobile::{
    ClientConfig, ClientEvent, EventListener, MobileError, SecretStore, SecretStoreError,
    TandemClient,
};

/// Poll on this thread, park until woken: an executor with no tokio in it.
fn block_on<F: Future>(fut: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

/// The app's Keychain, in memory; `broken` fails every call.
#[derive(Default)]
struct Memory {
    secrets: Mutex<HashMap<String, Vec<u8>>>,
    broken: bool,
}

impl SecretStore for Memory {
    fn load(&self, name: String) -> Result<Option<Vec<u8>>, SecretStoreError> {
        if self.broken {
            return Err(SecretStoreError::Failed { message: "keychain locked".into() });
        }
        Ok(self.secrets.lock().unwrap().get(&name).cloned())
    }
    fn store(&self, name: String, secret: Vec<u8>) -> Result<(), SecretStoreError> {
        self.secrets.lock().unwrap().insert(name, secret);
        Ok(())
    }
    fn delete(&self, name: String) -> Result<(), SecretStoreError> {
        self.secrets.lock().unwrap().remove(&name);
        Ok(())
    }
}

fn config(dir: &std::path::Path, store: Option<Arc<dyn SecretStore>>) -> ClientConfig {
    ClientConfig {
        data_dir: dir.to_str().unwrap().to_owned(),
        device_name: "Test phone".into(),
        platform: None,
        app_version: None,
        secret_store: store,
        extra_roots_pem: Vec::new(),
        session_renew_after_ms: None,
        session_renew_after_records: None,
        session_rekey_after_ms: None,
        session_renewal_timeout_ms: None,
    }
}

#[test]
fn the_session_schedule_can_be_shortened_but_not_zero() {
    let dir = tempfile::tempdir().unwrap();
    block_on(async {
        let zero = ClientConfig { session_rekey_after_ms: Some(0), ..config(dir.path(), None) };
        let e = TandemClient::open(zero).await.err().unwrap();
        assert!(matches!(&e, MobileError::InvalidUse(m) if m.contains("rekey_after_ms")), "{e:?}");
        let short = ClientConfig {
            session_renew_after_ms: Some(2_000),
            session_renew_after_records: Some(100),
            session_rekey_after_ms: Some(1_000),
            session_renewal_timeout_ms: Some(1_000),
            ..config(dir.path(), None)
        };
        let client = TandemClient::open(short).await.unwrap();
        client.shutdown().await;
    });
}

#[test]
fn the_key_lives_in_the_apps_store_and_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Memory::default());
    block_on(async {
        let client = TandemClient::open(config(dir.path(), Some(store.clone()))).await.unwrap();
        let id = client.device_id();
        assert!(store.secrets.lock().unwrap().contains_key("device-key"));
        assert!(!dir.path().join("secrets").exists(), "no key file next to an app store");
        assert!(client.desktops().is_empty());
        client.shutdown().await;
        drop(client);

        let again = TandemClient::open(config(dir.path(), Some(store.clone()))).await.unwrap();
        assert_eq!(again.device_id(), id);
        again.shutdown().await;
    });
}

#[test]
fn the_default_store_is_a_file_in_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    block_on(async {
        let client = TandemClient::open(config(dir.path(), None)).await.unwrap();
        assert!(dir.path().join("secrets/device-key").exists());
        let id = client.device_id();
        drop(client);
        let again = TandemClient::open(config(dir.path(), None)).await.unwrap();
        assert_eq!(again.device_id(), id);
    });
}

#[test]
fn a_failing_store_is_a_storage_error_not_a_new_identity() {
    let dir = tempfile::tempdir().unwrap();
    let broken = Arc::new(Memory { broken: true, ..Memory::default() });
    let err = block_on(TandemClient::open(config(dir.path(), Some(broken)))).unwrap_err();
    let MobileError::Storage(message) = &err else { panic!("{err:?}") };
    assert!(message.contains("keychain locked"), "{message}");
}

#[test]
fn errors_that_need_no_relay() {
    let dir = tempfile::tempdir().unwrap();
    block_on(async {
        let client = TandemClient::open(config(dir.path(), None)).await.unwrap();
        let e = client.start_pairing("not a link".into()).await.err().unwrap();
        assert!(matches!(e, MobileError::InvalidQr(_)), "{e:?}");
        let e = client.submit("nobody".into(), "hi".into(), None, None).await.unwrap_err();
        assert_eq!(e, MobileError::UnknownDesktop("nobody".into()));
        let e = client.forget("nobody".into()).await.unwrap_err();
        assert_eq!(e, MobileError::UnknownDesktop("nobody".into()));
        assert!(client.history("nobody".into(), "t".into(), 0).await.is_err());
    });
}

struct Count(Mutex<Vec<ClientEvent>>);

impl EventListener for Count {
    fn on_event(&self, event: ClientEvent) {
        self.0.lock().unwrap().push(event);
    }
}

#[test]
fn subscriptions_stop_on_cancel_and_on_drop() {
    let dir = tempfile::tempdir().unwrap();
    block_on(async {
        let client = TandemClient::open(config(dir.path(), None)).await.unwrap();
        let listener = Arc::new(Count(Mutex::new(Vec::new())));
        let a = client.subscribe(listener.clone());
        let b = client.subscribe(listener.clone());
        assert!(a.is_active() && b.is_active());
        a.cancel();
        a.cancel();
        assert!(!a.is_active() && b.is_active());
        // Dropping the last reference stops the task (it released its
        // listener): only the test's own reference is left.
        drop(b);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while Arc::strong_count(&listener) > 1 {
            assert!(std::time::Instant::now() < deadline, "a dropped subscription kept running");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(listener.0.lock().unwrap().is_empty());
    });
}
