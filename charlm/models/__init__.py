"""Models: the architectures (`recurrent`, `transformer`, `seq2seq`), their contract (`protocol`) and
names (`registry`), the states they carry (`state`), and the recurrent layers' parts (`cells`,
`kernels`, `recurrent_layers`, `recurrent_stepper`)."""
