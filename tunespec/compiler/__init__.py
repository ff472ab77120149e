"""The compiler: spec -> build directory."""
