//! Blocking entry points for synchronous callers (the trainer's training loop, scripts).
//!
//! Each builds a small current-thread runtime for the one call. Inside a tokio runtime use the
//! async API instead: blocking there would stall the runtime, so it is refused with an error.

use std::future::Future;
use std::path::{Path, PathBuf};

use crate::error::{Result, StoreError};

/// Runs `fut` to completion on a fresh current-thread runtime.
pub fn block_on<F: Future>(fut: F) -> Result<F::Output> {
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(StoreError::Runtime(
            "llamaduo_store::blocking called inside a tokio runtime: .await the async API instead"
                .into(),
        ));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StoreError::Runtime(format!("cannot start a tokio runtime: {e}")))?;
    Ok(rt.block_on(fut))
}

/// Blocking [`crate::resolve_to_local`].
pub fn resolve_to_local(url: &str, cache_dir: &Path) -> Result<PathBuf> {
    block_on(crate::resolve_to_local(url, cache_dir))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_local_paths_without_a_runtime() {
        let dir = tempfile::tempdir().unwrap();
        let got = resolve_to_local(dir.path().to_str().unwrap(), dir.path()).unwrap();
        assert_eq!(got, dir.path());
        let missing = resolve_to_local("/definitely/not/here", dir.path()).unwrap_err();
        assert!(missing.is_not_found(), "{missing}");
    }

    #[tokio::test]
    async fn refuses_to_block_inside_a_runtime() {
        let e = block_on(async {}).unwrap_err();
        assert!(e.to_string().contains(".await"), "{e}");
    }
}
