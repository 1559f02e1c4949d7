//! pipeline: see the module map in the README.
