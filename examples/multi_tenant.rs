//! Multi-tenant throttling with dynamic backends.
//!
//! Each request carries `Authorization: Bearer <tenant>:<secret>`. The tenant's
//! tier decides three things per request:
//!
//! | tier | backend | rate |
//! |---|---|---|
//! | free | in-memory backend A (shared by every free tenant) | 5/min per tenant |
//! | pro | in-memory backend B (in production: a `RedisBackend`) | 100/min per tenant |
//! | internal | — | exempt (`Identity::Unlimited`, no storage touched) |
//!
//! How it fits together:
//!
//! * [`BackendScopeLayer`] (outermost) picks the tier's backend for each
//!   request and runs the rest of the stack inside
//!   [`traffik::backend::scope`];
//! * the throttle is built with `.dynamic_backend()` (use the scope's
//!   backend), `.dynamic_rate(..)` (the tier's rate) and an `.identifier(..)`
//!   that returns the tenant (or `Identity::Unlimited` for internal callers);
//! * at shutdown, `axum::serve(..).with_graceful_shutdown(signal)` drains the
//!   connections, then each backend is `close()`d — what Traffik's lifespan
//!   does in Starlette/FastAPI.
//!
//! ```sh
//! cargo run --example multi_tenant            # demo, then serves until Ctrl-C (PORT, default 3011)
//! cargo run --example multi_tenant -- --once  # demo, then graceful shutdown
//! curl -i -H 'Authorization: Bearer acme:acme-secret' http://127.0.0.1:3011/api/whoami
//! ```

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::{extract::Request, http::StatusCode, routing::get, Router};
use http::request::Parts;
use traffik::backend::{BackendScopeLayer, InMemoryBackend};
use traffik::identity::peer_addr;
use traffik::{HttpThrottle, Identity, MiddlewareThrottle, Rate, RateLimitHeaders, ThrottleLayer};

/// A tenant's plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tier {
    Free,
    Pro,
    Internal,
}

/// A known tenant.
#[derive(Debug, Clone)]
struct Tenant {
    name: String,
    tier: Tier,
}

/// Tenants by their secret. A real app would check a signed token or a
/// database; the point here is what happens once the tenant is known.
#[derive(Clone)]
struct Tenants(Arc<HashMap<String, (String, Tier)>>);

impl Tenants {
    fn demo() -> Tenants {
        let tenants = [
            ("acme", "acme-secret", Tier::Free),
            ("initech", "initech-secret", Tier::Free),
            ("globex", "globex-secret", Tier::Pro),
            ("ops", "ops-secret", Tier::Internal),
        ];
        Tenants(Arc::new(
            tenants
                .into_iter()
                .map(|(name, secret, tier)| (name.to_owned(), (secret.to_owned(), tier)))
                .collect(),
        ))
    }

    /// The tenant of `Authorization: Bearer <tenant>:<secret>`, if the secret
    /// matches.
    fn of(&self, parts: &Parts) -> Option<Tenant> {
        let value = parts
            .headers
            .get(http::header::AUTHORIZATION)?
            .to_str()
            .ok()?;
        let token = value.strip_prefix("Bearer ")?;
        let (name, secret) = token.split_once(':')?;
        let (expected, tier) = self.0.get(name)?;
        (secret == expected).then(|| Tenant {
            name: name.to_owned(),
            tier: *tier,
        })
    }
}

/// One backend per paid tier; anonymous and internal requests get the free
/// one (internal requests never touch it: they are exempt).
#[derive(Clone)]
struct Backends {
    free: InMemoryBackend,
    pro: InMemoryBackend,
}

impl Backends {
    fn for_tier(&self, tier: Option<Tier>) -> InMemoryBackend {
        match tier {
            Some(Tier::Pro) => self.pro.clone(),
            _ => self.free.clone(),
        }
    }

    async fn close(&self) -> Result<(), traffik::Error> {
        self.free.close().await?;
        self.pro.close().await
    }
}

fn app(tenants: Tenants, backends: Backends) -> Result<Router, traffik::Error> {
    let (free_rate, pro_rate) = (Rate::per_minute(5)?, Rate::per_minute(100)?);

    let by_tenant = tenants.clone();
    let tier_of = tenants.clone();
    let api = HttpThrottle::builder()
        .uid("api")
        // The backend of the innermost scope (set by BackendScopeLayer).
        .dynamic_backend()
        // One counter per tenant; anonymous callers per client address.
        .identifier(move |parts: &Parts| {
            let identity = match by_tenant.of(parts) {
                Some(t) if t.tier == Tier::Internal => Identity::Unlimited,
                Some(t) => Identity::key(format!("tenant:{}", t.name)),
                None => match peer_addr(&parts.extensions) {
                    Some(addr) => Identity::key(format!("anon:{}", addr.ip())),
                    None => Identity::key("anon:unknown"),
                },
            };
            async move { identity }
        })
        // The rate of the tenant's tier.
        .dynamic_rate(move |parts: &Parts| {
            let rate = match tier_of.of(parts).map(|t| t.tier) {
                Some(Tier::Pro) => pro_rate,
                Some(Tier::Internal) => Rate::unlimited(),
                Some(Tier::Free) | None => free_rate,
            };
            async move { rate }
        })
        // One quota per tenant for the whole API, not per route.
        .shared_across_routes()
        .headers(RateLimitHeaders::Ietf)
        .build()?;

    let whoami_tenants = tenants.clone();
    let select_tenants = tenants;
    Ok(Router::new()
        .route(
            "/api/whoami",
            get(move |req: Request| {
                let tenant = whoami_tenants.of(&req.into_parts().0);
                async move {
                    match tenant {
                        Some(t) => Ok(format!("{} ({:?})\n", t.name, t.tier)),
                        None => Err((StatusCode::UNAUTHORIZED, "unknown tenant\n")),
                    }
                }
            }),
        )
        .route("/health", get(|| async { "ok\n" }))
        // Inner: the throttle rules, resolving the backend per request...
        .layer(ThrottleLayer::scoped().rule(MiddlewareThrottle::new(api).path(r"^/api/")))
        // ...outer: the scope they resolve it from.
        .layer(BackendScopeLayer::new(move |parts: &Parts| {
            backends.for_tier(select_tenants.of(parts).map(|t| t.tier))
        })))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let backends = Backends {
        free: InMemoryBackend::builder().prefix("tier-free").build(),
        pro: InMemoryBackend::builder().prefix("tier-pro").build(),
    };
    let app = app(Tenants::demo(), backends.clone())?;

    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3011);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    println!("traffik multi-tenant example on http://{addr}");

    // Shut down on Ctrl-C, or right after the demo with --once.
    let once = std::env::args().any(|a| a == "--once");
    let (demo_done, demo_done_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        if once {
            let _ = demo_done_rx.await;
        } else {
            let _ = tokio::signal::ctrl_c().await;
        }
        println!("\nshutting down: draining connections...");
    };
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await
    });

    demo(addr).await?;
    println!(
        "\nkeys stored: free backend {}, pro backend {}",
        backends.free.len(),
        backends.pro.len()
    );
    if once {
        let _ = demo_done.send(());
    } else {
        println!(
            "\nStill serving (Ctrl-C to stop): curl -i -H 'Authorization: Bearer acme:acme-secret' http://{addr}/api/whoami"
        );
    }

    // Lifespan end: wait for the server to drain, then close the backends
    // (non-persistent backends clear their keys; a Redis backend would also
    // drop its connection).
    server.await??;
    backends.close().await?;
    println!("backends closed (free: {} keys)", backends.free.len());
    Ok(())
}

/// Fires requests as each kind of caller and prints the answers.
async fn demo(addr: SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
    let show = ["retry-after", "ratelimit"];
    let callers = [
        (
            "acme (free: 5/min, backend A)",
            "Bearer acme:acme-secret",
            7,
        ),
        (
            "initech (free: its own 5/min, also backend A)",
            "Bearer initech:initech-secret",
            2,
        ),
        (
            "globex (pro: 100/min, backend B)",
            "Bearer globex:globex-secret",
            7,
        ),
        ("ops (internal: exempt)", "Bearer ops:ops-secret", 7),
        (
            "a wrong secret (anonymous: 5/min per IP)",
            "Bearer acme:guess",
            2,
        ),
    ];
    let mut results = Vec::new();
    for (label, token, count) in callers {
        let statuses = common::burst(
            addr,
            &format!("{count} × GET /api/whoami as {label}:"),
            count,
            "GET",
            "/api/whoami",
            &[("authorization", token)],
            &show,
        )
        .await?;
        results.push(statuses);
    }
    // The demo doubles as a check (`--once` in CI).
    assert_eq!(results[0], [200, 200, 200, 200, 200, 429, 429]);
    assert_eq!(results[1], [200, 200]);
    assert_eq!(results[2], [200; 7]);
    assert_eq!(results[3], [200; 7]);
    assert_eq!(results[4], [401, 401]);
    Ok(())
}
