//! Delivery engine cores.
