"""freshrec.publishing"""
