"""Generation: the request (`request`), sampling text from a language model (`sampling`), decoding
a pair model's outputs (`translation`)."""
