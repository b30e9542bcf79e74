"""The synthesis engine: the network, its intensity encoding, model cards, sliding-window inference, training, and
the running of one case or a batch of cases."""
