//! Shared helpers live in the test files; this crate only hosts cross-crate end-to-end tests.
