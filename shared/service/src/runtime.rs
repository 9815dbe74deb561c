//! The tokio runtime a service binary runs on.

/// A multi-thread runtime with `worker_threads` workers (0: one per core,
/// tokio's default), every driver enabled.
pub fn build(worker_threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if worker_threads > 0 {
        b.worker_threads(worker_threads);
    }
    b.enable_all().build()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_worker_count_is_the_configured_one() {
        let rt = super::build(1).unwrap();
        assert_eq!(rt.metrics().num_workers(), 1);
        let rt = super::build(0).unwrap();
        assert_eq!(
            rt.metrics().num_workers(),
            std::thread::available_parallelism().map_or(1, |n| n.get())
        );
    }
}
