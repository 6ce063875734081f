//! Black-box tests live in this package's tests/ folder; they drive the built binaries.
