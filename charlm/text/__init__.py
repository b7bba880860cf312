"""Text, standard library only: files read as text in chunks, tokens and the vocab (`tokens`), the
files of a corpus found in folders and read as one stream of documents (`corpus`), pair files
(`pairs`)."""
