"""Inside the network: the LSTM gates and cell state over one utterance, and their figures; imports inference, model, decoding and below, never scoring, deploy, serving or cli."""
