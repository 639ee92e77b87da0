//! Text generation (filled in by the foundation work).
