"""The runtime: build directory -> trained adapter, merged model, evaluation."""
