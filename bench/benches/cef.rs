//! PLACEHOLDER: criterion benchmark, filled in by its owner.
fn main() {}
