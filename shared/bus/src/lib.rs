//! exo-bus (work in progress).
