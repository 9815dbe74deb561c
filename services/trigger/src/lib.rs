//! exo-trigger (work in progress).
