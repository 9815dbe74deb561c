//! exo-service (work in progress).
