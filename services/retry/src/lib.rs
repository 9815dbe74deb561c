//! exo-retry (work in progress).
