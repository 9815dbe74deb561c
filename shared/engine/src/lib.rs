//! exo-engine (work in progress).
