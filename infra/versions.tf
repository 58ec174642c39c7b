terraform {
  # 1.11: write-only arguments (the secrets' values never enter the state).
  required_version = ">= 1.11"

  required_providers {
    google = {
      source = "hashicorp/google"
      # 6.23 added secret_data_wo on secret versions.
      version = ">= 6.23, < 8.0"
    }
    archive = {
      source  = "hashicorp/archive"
      version = "~> 2.4"
    }
    # Generates the admin token and the user-link secret when their variables are left empty.
    random = {
      source  = "hashicorp/random"
      version = "~> 3.5"
    }
  }
}

provider "google" {
  project = var.project_id
  region  = var.region
}
