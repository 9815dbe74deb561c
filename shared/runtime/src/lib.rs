//! exo-runtime (work in progress).
