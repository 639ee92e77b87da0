//! GGUF import: read llama.cpp's GGUF files and write a Hugging Face model folder.
