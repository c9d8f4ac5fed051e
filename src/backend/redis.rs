//! Redis backend (feature `redis`). Work in progress.
