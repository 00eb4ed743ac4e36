//! One layer's tar stream → a directory in overlayfs's format.
//! (Filled by the store work.)
