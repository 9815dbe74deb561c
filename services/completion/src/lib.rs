//! exo-completion (work in progress).
