"""Operations: the reconcile cycle and the commands, against protocols, not adapters."""
