//! Cube's web UI: the pages the manager serves at `/ui`.
