//! `mesh-bridge state export|import|check`: moving state as JSON, including the seed system's legacy map.
