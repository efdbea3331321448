from avmdvae.cli import main

main()
