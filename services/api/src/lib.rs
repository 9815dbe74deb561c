//! exo-api (work in progress).
