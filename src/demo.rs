//! The end-to-end demo.
