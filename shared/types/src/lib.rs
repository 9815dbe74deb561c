//! exo-types (work in progress).
