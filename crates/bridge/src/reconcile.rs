//! Applies Docker truth to the registry and the pool; releases leaked reservations after several resyncs.
