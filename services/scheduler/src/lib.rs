//! exo-scheduler (work in progress).
