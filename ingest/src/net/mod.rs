//! net: see the module map in the README.
