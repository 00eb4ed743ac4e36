//! In-process tests of the E2B listener against the fake backend.
