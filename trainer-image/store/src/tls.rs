//! TLS setup: rustls with the ring provider (no aws-lc C build), installed once per process.
//!
//! reqwest is built with `rustls-no-provider` (and object_store's clients share that reqwest),
//! so a process-wide default provider must exist before the first HTTPS client is built.

/// Installs ring as rustls' process default provider, unless one is installed already (the
/// stage binary or another crate may have done it first; either is fine).
pub fn install_ring_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // A race with another installer returns Err; that installer's provider is then used.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}
