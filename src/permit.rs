//! [`Permit`]: a place among a `max_in_flight` throttle's, held while a
//! request is in progress.

use std::sync::Arc;
use std::time::Duration;

use crate::backend::DynBackend;
use crate::key::OwnedKey;
use crate::pipeline::Core;
use crate::Decision;

/// One of the places of an in-flight limit
/// ([`.max_in_flight(n)`](crate::HttpThrottleBuilder::max_in_flight)),
/// taken by [`HttpThrottle::acquire`](crate::HttpThrottle::acquire) and
/// given back when the permit is dropped.
///
/// On a backend whose places expire (Redis), the place is a lease renewed
/// in the background while the permit lives, so that an app instance that
/// crashes loses its places within one lease
/// ([`.lease(..)`](crate::HttpThrottleBuilder::lease)).
///
/// A WebSocket handler moves the handshake's permit into `on_upgrade` to
/// limit the sockets a client keeps open:
///
/// ```
/// # #[cfg(feature = "axum")] {
/// use axum::extract::{ws::WebSocketUpgrade, Request};
/// use axum::routing::get;
/// use axum::Router;
/// use traffik::{backend::InMemoryBackend, HttpThrottle};
///
/// let sockets = HttpThrottle::builder()
///     .uid("sockets")
///     .max_in_flight(2)
///     .shared_across_routes()
///     .backend(InMemoryBackend::new())
///     .build()
///     .unwrap();
/// let app: Router = Router::new().route("/ws", get(move |upgrade: WebSocketUpgrade, request: Request| {
///     let sockets = sockets.clone();
///     async move {
///         let permit = sockets.acquire(&request).await?; // a 429 past 2 open sockets
///         Ok::<_, traffik::Error>(upgrade.on_upgrade(move |socket| async move {
///             let _permit = permit; // held while the socket is open
///             drop(socket);
///         }))
///     }
/// }));
/// # }
/// ```
#[must_use = "a Permit gives its place back when dropped"]
pub struct Permit {
    decision: Decision,
    /// `None` when no place was taken (a backend that failed open, shadow
    /// mode over the limit).
    place: Option<Place>,
}

struct Place {
    core: Arc<Core>,
    backend: DynBackend,
    key: OwnedKey,
    id: u64,
    /// The task renewing the lease, on a backend whose places expire.
    renewal: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("decision", &self.decision)
            .field("held", &self.place.is_some())
            .finish()
    }
}

impl Permit {
    /// A permit holding the place `id` of `key`, renewed every third of
    /// `lease` when the backend's places expire.
    pub(crate) fn new(
        decision: Decision,
        core: &Arc<Core>,
        backend: &DynBackend,
        key: OwnedKey,
        id: u64,
        lease: Duration,
    ) -> Permit {
        let renewal = backend.places_expire().then(|| {
            let (backend, key) = (Arc::clone(backend), key.clone());
            let every = (lease / 3).max(Duration::from_millis(1));
            let renew = async move {
                let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                loop {
                    tick.tick().await;
                    if let Err(error) = backend.renew(&key.as_key(), id, lease).await {
                        tracing::warn!(throttle = key.as_key().throttle(), error = %crate::error::Chain(&error), "traffik could not renew an in-flight place");
                    }
                }
            };
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => Some(runtime.spawn(renew)),
                Err(_) => {
                    tracing::warn!(throttle = core.uid(), "no Tokio runtime to renew an in-flight place on: it lasts one lease");
                    None
                }
            }
        });
        core.metrics.in_flight(1.0);
        Permit {
            decision,
            place: Some(Place {
                core: Arc::clone(core),
                backend: Arc::clone(backend),
                key,
                id,
                renewal: renewal.flatten(),
            }),
        }
    }

    /// A permit that holds no place (nothing to give back).
    pub(crate) fn empty(decision: Decision) -> Permit {
        Permit {
            decision,
            place: None,
        }
    }

    /// The decision that gave the place.
    pub fn decision(&self) -> &Decision {
        &self.decision
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.core.metrics.in_flight(-1.0);
        if let Some(renewal) = self.renewal.take() {
            renewal.abort();
        }
        let key = self.key.as_key();
        let log = |error: crate::Error| {
            tracing::warn!(throttle = key.throttle(), error = %crate::error::Chain(&error), "traffik could not give an in-flight place back; it comes back when its lease ends");
        };
        match self.backend.release(&key, self.id).into_ready() {
            Ok(Ok(())) => {}
            Ok(Err(error)) => log(error),
            Err(pending) => {
                let (core, key) = (Arc::clone(&self.core), self.key.clone());
                let release = async move {
                    let result = pending.await;
                    core.lines.freed(&key);
                    if let Err(error) = result {
                        tracing::warn!(throttle = key.as_key().throttle(), error = %crate::error::Chain(&error), "traffik could not give an in-flight place back; it comes back when its lease ends");
                    }
                };
                match tokio::runtime::Handle::try_current() {
                    Ok(runtime) => drop(runtime.spawn(release)),
                    Err(_) => log(crate::Error::backend(
                        "no Tokio runtime to give the place back on",
                    )),
                }
                return;
            }
        }
        self.core.lines.freed(&self.key);
    }
}
