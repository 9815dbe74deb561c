//! exo-store (work in progress).
