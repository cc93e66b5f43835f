"""freshrec.training"""
