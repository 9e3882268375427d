/* recorded device: python3.8-dev is installed */
