//! (Filled by the registry work.)
