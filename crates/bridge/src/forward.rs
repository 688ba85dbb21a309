//! One listening socket a reserved port, each connection spliced to a running replica.
