//! A guide to traffik, from the concepts to running it in production.
#![doc = include_str!("../docs/guide/1-concepts.md")]
#![doc = include_str!("../docs/strategies.svg")]
#![doc = include_str!("../docs/guide/2-after-picture.md")]
#![doc = include_str!("../docs/guide/3-features.md")]
#![doc = include_str!("../docs/guide/4-redis.md")]
#![doc = include_str!("../docs/guide/5-beyond-http.md")]
