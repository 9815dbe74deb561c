//! exo-test-support (work in progress).
